"""The synthetic-capture size options shared by the benchmark scripts that render their own capture."""
from __future__ import annotations

import argparse


def add_capture_args(ap: argparse.ArgumentParser, subjects: int, frames: int = 3, subjects_help: str = "") -> None:
    """--subjects, --frames, --cameras, --resolution (defaults: the pipeline's capture size, 16 views at 512²)."""
    ap.add_argument("--subjects", type=int, default=subjects, help=subjects_help or "subjects of the capture")
    ap.add_argument("--frames", type=int, default=frames, help="frames per subject")
    ap.add_argument("--cameras", type=int, default=16, help="views per frame")
    ap.add_argument("--resolution", type=int, default=512, help="image size (square)")
