"""Fixtures for the fitter's tests: a small factory head model whose identity and expression are
identifiable from its landmarks (10 identity / 8 expression components of smooth random fields,
478 landmarks spread over the head), a frontal camera arc and ground-truth sequences."""
import numpy as np
import pytest
from fit_testdata import N_EXPR, N_SHAPE
from flame_folder_factory import write_flame_folder

from flame_fitting.fit.synthetic import arc_cameras, project_landmarks, random_params
from flame_fitting.head.head_model import HeadModel


@pytest.fixture(scope="session")
def head_folder(tmp_path_factory):
    return write_flame_folder(tmp_path_factory.mktemp("fit_head") / "head", n_shape=N_SHAPE, n_expr=N_EXPR, seed=3)


@pytest.fixture(scope="session")
def head(head_folder) -> HeadModel:
    return HeadModel.from_folder(head_folder.path, N_SHAPE, N_EXPR)


@pytest.fixture(scope="session")
def cams():
    """12 cameras on a frontal arc (yaw ±70°, pitch 0 / ±10°) at 1 m, 512², f = 1500 px."""
    return arc_cameras(12, np.zeros(3), 1.0, yaw_deg=(-70, 70), pitch_deg=(-10, 10))


@pytest.fixture(scope="session")
def truth(head):
    """Two frames of one subject: {frame: FrameParams} (jaw open, head rotated up to 15°, eyes still)."""
    rng = np.random.default_rng(7)
    shape = rng.standard_normal(N_SHAPE)
    return {f: random_params(head, rng, shape=shape) for f in (3, 8)}


@pytest.fixture(scope="session")
def exact_obs(head, cams, truth):
    return {f: project_landmarks(head, cams, p) for f, p in truth.items()}


@pytest.fixture(scope="session")
def noisy_obs(head, cams, truth):
    rng = np.random.default_rng(11)
    return {f: project_landmarks(head, cams, p, 1.0, rng) for f, p in truth.items()}
