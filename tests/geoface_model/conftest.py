"""Shared fixtures of the geoface_model tests."""
import pytest
import torch

from geoface_model.synthetic import make_synthetic_shard


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on the shared 2-core machine two OpenMP threads stall badly under load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def micro_shards(tmp_path_factory):
    """A dataset folder with one training shard: 5 samples × 4 views, 32² views and UV maps (seed 0)."""
    d = tmp_path_factory.mktemp("ds")
    make_synthetic_shard(d / "train.safetensors", n_samples=5, n_views=4, resolution=32, uv_resolution=32, seed=0)
    return d
