"""Shared constants and helpers of the fitter's tests (fixtures are in conftest.py)."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))  # flame_folder_factory

from flame_fitting.fit.synthetic import model_outputs  # noqa: E402

N_SHAPE, N_EXPR = 10, 8


def vertex_error_mm(head, fit, truth) -> float:
    """Mean vertex distance (mm) between fitted and true meshes, over all vertices and frames."""
    return float(np.mean([np.linalg.norm(fit.vertices[f] - model_outputs(head, p)[0], axis=1).mean() * 1e3
                          for f, p in truth.items()]))
