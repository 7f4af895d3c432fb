"""The synthetic-capture size options shared by the benchmark scripts that render their own capture."""
from __future__ import annotations

import argparse


def add_capture_args(ap: argparse.ArgumentParser, subjects: int, frames: int = 3, subjects_help: str = "") -> None:
    """--subjects, --frames, --cameras, --resolution (defaults: the pipeline's capture size, 16 views at 512²)."""
    ap.add_argument("--subjects", type=int, default=subjects, help=subjects_help or "subjects of the capture")
    ap.add_argument("--frames", type=int, default=frames, help="frames per subject")
    ap.add_argument("--cameras", type=int, default=16, help="views per frame")
    ap.add_argument("--resolution", type=int, default=512, help="image size (square)")


def make_capture(root, a: argparse.Namespace, subjects: int | None = None):
    """The stand-in head model (seed 0) at `root`/head and a synthetic capture (seed 0) of the size the options of
    `add_capture_args` name (`subjects` overrides --subjects) at `root`/cap; returns (head, capture) folders."""
    from pathlib import Path

    from flame_fitting.head.standin import build_standin
    from pipelines.synthetic import SyntheticConfig, generate

    head, cap = Path(root) / "head", Path(root) / "cap"
    build_standin(head, seed=0)
    generate(head, cap, SyntheticConfig(seed=0, subjects=a.subjects if subjects is None else subjects,
                                        frames=a.frames, cameras=a.cameras, resolution=a.resolution), progress=False)
    return head, cap
