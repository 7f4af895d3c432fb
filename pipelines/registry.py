"""`import_capture(source, root_in, out, cfg)`: one entry point for every capture source, chosen by
`captures.source` in params.yaml (see docs/sources.md). Reader modules are imported on use, so
h5py / video decoding are only loaded for the sources that need them.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from flame_fitting.formats.capture import CaptureError
from flame_fitting.core.fileio import check_output_dir
from pipelines.import_config import ImportConfig, ImportReport

SOURCES = ("synthetic", "nersemble", "renderme360", "colmap", "transforms_json", "folder")
READERS = {"nersemble": "pipelines.nersemble", "renderme360": "pipelines.renderme360", "colmap": "pipelines.colmap",
           "transforms_json": "pipelines.transforms_json", "folder": "pipelines.folder"}


def import_capture(source: str, root_in: Path | str, out: Path | str, cfg: ImportConfig | None = None,
                   overwrite: bool = False) -> ImportReport:
    """Read the capture at `root_in` in format `source` and write the canonical capture at `out`.

    `out` is checked before anything is read (fileio.check_output_dir): it may not equal or contain
    `root_in`, and an existing non-empty `out` is replaced only when geoface wrote it and `overwrite`."""
    if source not in SOURCES:
        raise CaptureError(f"captures.source: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "synthetic":
        raise CaptureError("captures.source 'synthetic' renders captures from a head model: use "
                           "pipelines.synthetic.generate (the captures stage does); import_capture reads real "
                           "sources: " + ", ".join(s for s in SOURCES if s != "synthetic"))
    root_in = Path(root_in).expanduser()
    if not root_in.exists():
        raise CaptureError(f"captures.root: {root_in} does not exist")
    if root_in.resolve() in Path(out).resolve().parents:  # the import would change what it reads, later imports too
        raise CaptureError(f"{out}: the output folder is inside the input {root_in}; choose an output folder outside it")
    check_output_dir(out, [root_in], overwrite, kind="capture")  # also: equal to or containing the input
    module = importlib.import_module(READERS[source])
    return module.import_capture(root_in, Path(out), cfg if cfg is not None else ImportConfig())
