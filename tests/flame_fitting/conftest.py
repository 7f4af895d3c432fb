"""Shared test helpers for flame_fitting tests: small meshes built in code."""
import numpy as np
import pytest

from flame_fitting.geometry.meshes import icosphere  # noqa: F401  (tests import it from here too)


@pytest.fixture(scope="session")
def sphere_mesh():
    """Head-sized icosphere (1280 faces, radius 0.1 m) as float32 verts (V,3) and int32 faces (F,3)."""
    v, f = icosphere(3)
    return (0.1 * v).astype(np.float32), f.astype(np.int32)
