"""Shared by the stage scripts: this checkout first on sys.path;
`paths(...)`, the input and output paths of the stage's `cmd` line in dvc.yaml; `run(main)`, which prints the
toolkit's own errors as one line (stage, file or key, problem) and exits 1, unwinds on SIGTERM as on Ctrl-C (exit
130), and makes the exit fast;
`start_pool_early(module)`, which a data stage calls before its heavy imports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python stages/x.py`: import this checkout's packages first
    sys.path.insert(0, str(ROOT))

from flame_fitting.core.errors import GeofaceError, error_line  # noqa: E402
from flame_fitting.core.interrupt import exiting_interrupted, unwind_on_sigterm  # noqa: E402


def paths(doc: str, *names: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The paths on the stage's command line: `names` are positional inputs ("fits") or required options
    ("--out"); every value is a Path, attributes named as argparse does (--head-model -> head_model)."""
    ap = argparse.ArgumentParser(prog=f"python {sys.argv[0]}", description=doc.split("\n")[0])
    for name in names:
        ap.add_argument(name, type=Path, **({"required": True} if name.startswith("--") else {}))
    return ap.parse_args(argv)


def num(x, digits: int = 4) -> str:
    """A metric for the stage's summary line: `digits` significant digits ("3.231", not 3.2309476285193544), "n/a"
    where it could not be computed (None or NaN)."""
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def run(main) -> None:
    """Call `main()`; an error about the input (GeofaceError, or an OSError naming a path) becomes one line on
    stderr and exit status 1
    instead of a traceback. Any other exception is a bug and keeps its traceback. SIGTERM (`kill`, a scheduler's
    cancel) unwinds as Ctrl-C does (flame_fitting/core/interrupt.py: the pool's busy processes are stopped, the
    temporaries removed): one line, exit status 130. Then the objects alive are frozen for a faster exit
    (flame_fitting/core/gc_freeze.py: ~0.5 s per stage that imported torch)."""
    unwind_on_sigterm()
    try:
        main()
    except BrokenPipeError:
        raise
    except KeyboardInterrupt as e:
        status = exiting_interrupted()  # first: a second Ctrl-C / SIGTERM from here on is ignored (interrupt.py)
        again = getattr(e, "again", None)  # the train stage: resume or start over (train_run.TrainInterrupted)
        print(f"{Path(sys.argv[0]).stem}: interrupted; what it had not finished was not written (the temporaries "
              "are removed; units and checkpoints completed before stay)"
              f"{'; ' + again('running it') if again is not None else ''}", file=sys.stderr)
        sys.exit(status)
    except (GeofaceError, OSError) as e:  # OSError: the system's word about a path (permission, not a folder …)
        print(f"{Path(sys.argv[0]).stem}: error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)
    finally:
        from flame_fitting.core.gc_freeze import freeze

        freeze()


def start_pool_early(module: str) -> None:
    """Start the local pool's fork server (params.yaml `executor`, when `local` with workers > 1) preloading `module`,
    the stage's unit function's, so that it imports in parallel with this script's own imports
    (flame_fitting.core.executor.start_pool_early). Bad params are left to the stage's own validation."""
    from flame_fitting.core.executor import executor_params, start_pool_early as start
    from flame_fitting.core.params import read_params

    try:
        cfg = executor_params(read_params())
    except (GeofaceError, OSError):
        return
    start(cfg, module)
