"""What every `geoface` subcommand shares: errors in the CLI's own words (`geoface CMD: ROOT /x does not exist`),
input checks, the --set / --params / --force options and the output check behind --force."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import check_output_dir, file_ancestor

from .config import Section, build, describe, load_class


class CliError(GeofaceError, ValueError):
    """A command line the toolkit refuses (missing input, bad option), said in the CLI's words."""


def need(path: str | Path | None, metavar: str, kind: str = "exists") -> Path:
    """`path` as a Path; CliError `METAVAR PATH does not exist` (or `is not a folder` / `is not a file`)."""
    p = Path(path) if path is not None else None
    if p is None or not p.exists():
        raise CliError(f"{metavar} {path} does not exist")
    if kind == "dir" and not p.is_dir():
        raise CliError(f"{metavar} {path} is not a folder")
    if kind == "file" and not p.is_file():
        raise CliError(f"{metavar} {path} is not a file")
    return p


def add_jobs(p) -> None:
    """--jobs: the sequences (work units) a data command runs at once on a local process pool."""
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="sequences run at once on a local process pool (default 1); the DVC stages take params.yaml's "
                        "`executor` section instead (docs/scaling.md)")


def executor_of(args):
    """The local executor of --jobs (a CliError below 1)."""
    from flame_fitting.core.executor import ExecutorConfig

    if args.jobs < 1:
        raise CliError(f"--jobs {args.jobs}: must be at least 1")
    return ExecutorConfig(kind="local", workers=args.jobs)


def writable_file(path: str | Path | None, option: str) -> Path | None:
    """Refuse, before any work, a file output that cannot be written: a folder, or a path under a file (it would
    fail only after the work, with the other outputs written)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{option} {p} is a folder; give the path of a file")
    if (parent := file_ancestor(p)) is not None:
        raise CliError(f"{option} {p}: {parent} is a file, not a folder")
    return p


def check_out(out: str | Path, inputs, force: bool, kind: str | None = None) -> Path:
    """Refuse OUT before any work when replacing it could lose data (fileio.check_output_dir; --force; `kind`: the
    output's kind, refused where the folder's marker names another)."""
    return check_output_dir(out, [i for i in inputs if i is not None], force, option="--force", kind=kind)


def command(sub, name: str, help: str, func, sections: list[Section] = (), chosen: bool = True,
            force: str | None = "replace the output folder(s) if an earlier geoface run wrote them (a folder geoface "
                                "did not write is never replaced)") -> argparse.ArgumentParser:
    """A subparser running `func(args, *configs)`; with `sections`, the --set / --params options and the params
    keys in its --help (rendered only when this subcommand is the one asked for: `chosen`)."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=describe(list(sections)) if sections and chosen else None)
    if sections:
        p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="params overrides (keys below; after the positional arguments, which it would take for "
                            "its own)" + (f", e.g. --set {_example(sections)}" if chosen else ""))
        p.add_argument("--params", metavar="FILE", help="start from the section(s) of this params.yaml")
    if force:
        p.add_argument("--force", action="store_true", help=force)
    p.set_defaults(func=func, sections=list(sections))
    return p


def _example(sections: list[Section]) -> str:
    """`KEY=DEFAULT` of the first key of the first section."""
    f = dataclasses.fields(load_class(sections[0][1]))[0]
    return f"{f.name}={f.default if f.default is not dataclasses.MISSING else 'VALUE'}"


def configs(args) -> list:
    """The configs of the subcommand's sections from --params and --set."""
    return build(args.sections, args.set, args.params)


def show(result) -> None:
    print(json.dumps(result, indent=2, default=str))
