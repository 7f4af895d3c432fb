"""A small real capture shared by the bad-file tests (import the fixture into a test module to use it):
a stand-in head rendered by the synthetic generator, 1 subject × 2 frames × 5 cameras at 320²
(yaw ±40°, every view finds the face), and `copy_capture` to damage a private copy of it."""
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from standin_cache import standin_copy
from pipelines.synthetic import SyntheticConfig, generate


@dataclass
class SmallCapture:
    head: Path      # stand-in head model folder
    capture: Path   # canonical capture (never modified: tests damage copies)


@pytest.fixture(scope="session")
def small_capture(tmp_path_factory) -> SmallCapture:
    root = tmp_path_factory.mktemp("robust")
    standin_copy(root / "head", seed=0, n_shape=10, n_expr=10)
    generate(root / "head", root / "cap", SyntheticConfig(subjects=1, frames=2, cameras=5, resolution=320,
                                                          yaw_range_deg=[-40, 40], seed=0, workers=1),
             progress=False)
    return SmallCapture(root / "head", root / "cap")


def copy_capture(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
