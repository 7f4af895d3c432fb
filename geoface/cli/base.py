"""What every `geoface` subcommand shares: errors in the CLI's own words (`geoface CMD: ROOT /x does not exist`),
input checks, the --set / --params / --force options, the output check behind --force, and the data commands'
executor options (params.yaml's `executor` keys)."""
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


# the executor options of every data command -> the ExecutorConfig field (params.yaml `executor.KEY`) each sets
EXECUTOR_OPTIONS = {"--executor": "kind", "--jobs": "workers", "--ray-address": "ray_address",
                    "--unit-timeout-s": "unit_timeout_s", "--retries": "retries", "--ray-memory-gb": "ray_memory_gb"}
RAY_ONLY = ("--ray-address", "--ray-memory-gb")
# --force of the data commands (landmarks ... dataset): OUT is brought up to date, not rebuilt (core/units.py)
DATA_FORCE = ("write into OUT again when an earlier geoface run wrote it: its sequences whose inputs, params and code "
              "did not change are kept as they are (units_kept), the others run again, and sequences no longer in the "
              "input and anything else put in its stage folders are removed: OUT's stage folders are geoface's (a "
              "folder geoface did not write is never replaced)")


def add_executor(p) -> None:
    """The options of where a data command's work units (one per sequence) run: the DVC stages' params.yaml
    `executor` section (flame_fitting.core.executor.ExecutorConfig), one option per key, validated by the same
    build_config (`executor_of`)."""
    g = p.add_argument_group("where the work units (one per sequence) run; the DVC stages take params.yaml's "
                             "`executor` section instead (docs/scaling.md)")
    g.add_argument("--executor", default="local", metavar="local|ray",
                   help="local: a process pool on this machine; ray: one task per sequence on a Ray cluster (pip "
                        "install 'geoface[ray]') (executor.kind; default %(default)s)")
    g.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: sequences run at once, this process's own included; ray without an address: the CPUs "
                        "of the local Ray started for the command (executor.workers; default 1)")
    g.add_argument("--ray-address", metavar="ADDRESS",
                   help="with --executor ray: the cluster (host:port, ray://host:port or auto), connected to before "
                        "anything is written (executor.ray_address; default $RAY_ADDRESS, else a local Ray)")
    g.add_argument("--unit-timeout-s", type=float, metavar="S",
                   help="seconds one sequence may run: one running longer is stopped and recorded as failed "
                        "(UnitTimeout in the output folder's failures.json), not retried; local: every sequence "
                        "then runs in a pool process (executor.unit_timeout_s; default: no limit)")
    g.add_argument("--retries", type=int, metavar="N",
                   help="times a sequence is re-run when its worker process or node is lost, not when it raises "
                        "(executor.retries; default 3)")
    g.add_argument("--ray-memory-gb", type=float, metavar="GB",
                   help="with --executor ray: GiB of memory one sequence needs (Ray places no more on a node than its "
                        "memory holds) (executor.ray_memory_gb; default: no request)")


def executor_of(args):
    """The ExecutorConfig of the executor options, validated as params.yaml's `executor` section is; a CliError
    naming the option otherwise (a ray option without --executor ray is refused, not ignored)."""
    from flame_fitting.core.executor import ExecutorConfig
    from flame_fitting.core.params import ParamsError, build_config

    if args.jobs < 1:
        raise CliError(f"--jobs {args.jobs}: must be at least 1")
    given = {option: getattr(args, option[2:].replace("-", "_")) for option in EXECUTOR_OPTIONS}
    if given["--executor"] == "local":  # (another value than local or ray is refused by build_config below)
        for option in RAY_ONLY:
            if given[option] is not None:
                raise CliError(f"{option} is an option of --executor ray (this run is --executor "
                               f"{given['--executor']})")
    values = {EXECUTOR_OPTIONS[o]: v for o, v in given.items() if v is not None}
    try:
        return build_config(ExecutorConfig, values, "executor")
    except ParamsError as e:  # `executor.KEY: problem` in the words of the option that set KEY
        key, _, problem = str(e).partition(": ")
        option = next((o for o, k in EXECUTOR_OPTIONS.items() if key == f"executor.{k}"), None)
        raise CliError(f"{option}: {problem}" if option else str(e)) from None


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
    p.set_defaults(func=func, sections=list(sections), usage_parser=p)  # usage_parser: its usage errors (cli._main)
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
