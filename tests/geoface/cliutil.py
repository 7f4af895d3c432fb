"""Run the `geoface` command line in the test process (shared by the CLI tests)."""
from __future__ import annotations

from geoface.cli import main


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `geoface ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
