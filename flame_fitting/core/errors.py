"""The root of the toolkit's own error types.

Every error the toolkit raises about its input (a file, a params key, a capture, a model folder) derives
from `GeofaceError`, and its message names the file or key and what is wrong. Command-line entry points
(stage scripts, `geoface`) print such an error as one line and exit non-zero; any other exception is a
bug and keeps its traceback.
"""
from flame_fitting.core.names import terminal_safe


class GeofaceError(Exception):
    """An error about the user's input: the message names the file (or params key) and the problem."""


class ExecutorError(GeofaceError, RuntimeError):
    """The executor cannot run (core/executor.py, core/pool.py): a Ray cluster that does not answer, Ray not
    installed, a local pool whose processes keep dying before they are ready."""


def error_line(e: Exception) -> str:
    """The one line an entry point prints for an input error: a GeofaceError's message, or for an error the system
    raised about a path (no permission, a file where a folder is needed, a full disk …) `PATH: reason`
    (`PATH -> OTHER: reason` for a rename). The names and paths in it come from files, so its control and format
    characters are written as escapes (core/names.py `terminal_safe`): one line, and nothing the terminal obeys."""
    if not isinstance(e, OSError) or e.filename is None:
        return terminal_safe(e)
    what = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
    return terminal_safe(f"{what}: {e.strerror or e}")
